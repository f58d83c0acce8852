//! The other nodes of a cluster, as the control socket sees them: an operation on a session
//! this node does not run is carried to the node that runs it ([`Peers::on_session`]), and
//! `list` and `health` gather every node's answer ([`Peers::on_every_node`]). The daemon
//! implements [`Peers`] over the cluster's database; a single daemon has none.
//!
//! [`LocalAnswers`] is the other end: it answers what other nodes carry here, for this node's
//! own sessions only (never carried further).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use warden_core::Supervisor;
use warden_webhooks::Webhooks;

use crate::protocol::{
    ErrorBody, HealthView, ListView, NodeHealthView, Op, Reply, SessionView, UnplacedView,
};
use crate::server::{Context, handle_here};

/// A boxed future, as [`Peers`] returns.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What every other live node answered to one operation, and where the database places each
/// session of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    /// Each other live node's reply (an error reply when it did not answer in time).
    pub replies: Vec<(String, Reply)>,
    /// Every session of the cluster, with the node that owns it (`None`: none right now).
    pub placements: Vec<(String, Option<String>)>,
}

/// `list`, as [`Peers::look`] asks it of every node.
pub const LIST: Op = Op::List {};

/// One look at the cluster, for watching it.
#[derive(Debug, Clone)]
pub struct Look {
    /// When its gathering started: nothing created after it is in it.
    pub started: tokio::time::Instant,
    /// Each other live node's list, by node name (`None`: it gave none).
    pub lists: Vec<(String, Option<ListView>)>,
    /// Every session of the cluster, with the node that owns it (`None`: none right now).
    pub placements: BTreeMap<String, Option<String>>,
}

impl Look {
    /// The look that the answers to [`LIST`], gathered from `started` on, make.
    pub fn of(gathered: &Gathered, started: tokio::time::Instant) -> Self {
        let lists = gathered
            .replies
            .iter()
            .map(|(node, reply)| {
                let list = reply
                    .result
                    .clone()
                    .filter(|_| reply.ok)
                    .and_then(|r| serde_json::from_value::<ListView>(r).ok());
                (node.clone(), list)
            })
            .collect();
        Self {
            started,
            lists,
            placements: gathered.placements.iter().cloned().collect(),
        }
    }
}

/// The rest of the cluster.
pub trait Peers: Send + Sync {
    /// This node's name.
    fn me(&self) -> &str;

    /// Carries `op`, about `token` (which this node does not run), to the node that runs it,
    /// and returns that node's reply once it has carried it out. `None` when the cluster has
    /// no such session: this node's `not found` stands. A reply that cannot come (no node took
    /// the operation in time, or the one that took it did not answer) is an `unavailable`
    /// error saying whether the operation may have happened.
    fn on_session<'a>(&'a self, token: &'a str, op: &'a Op) -> Answer<'a, Option<Reply>>;

    /// Asks every other live node `op` (each answers for itself, see [`LocalAnswers`]).
    fn on_every_node<'a>(&'a self, op: &'a Op) -> Answer<'a, Result<Gathered, ErrorBody>>;

    /// Every other live node's `list`, and the placements: what watching the cluster looks at
    /// (once a second per watcher). A cluster may share one look among the callers of about
    /// the same second; by default, each call gathers afresh.
    fn look(&self) -> Answer<'_, Result<Arc<Look>, ErrorBody>> {
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let gathered = self.on_every_node(&LIST).await?;
            Ok(Arc::new(Look::of(&gathered, started)))
        })
    }
}

/// The session an operation acts on, if it is one that only the node running that session
/// can carry out (so it is carried there). `create`, `history`, the webhook ops and the
/// cluster-wide ones are answered wherever they arrive.
pub fn carried_for(op: &Op) -> Option<&str> {
    match op {
        Op::SetProxy { token, .. }
        | Op::Start { token, .. }
        | Op::Stop { token }
        | Op::Restart { token, .. }
        | Op::RefreshQr { token }
        | Op::Logout { token }
        | Op::ForceCleanup { token }
        | Op::ResetReconnect { token }
        | Op::Status { token }
        | Op::Delete { token }
        | Op::SendText { token, .. }
        | Op::MessageStatus { token, .. }
        | Op::RetryMessage { token, .. }
        | Op::CancelMessage { token, .. }
        | Op::Outbox { token, .. } => Some(token),
        _ => None,
    }
}

/// Answers operations for this node's own sessions, as other nodes carry them here.
#[derive(Clone)]
pub struct LocalAnswers {
    context: Arc<Context>,
}

impl LocalAnswers {
    /// Answers from `supervisor` (and `webhooks`, for the webhook ops).
    pub fn new(supervisor: Supervisor, webhooks: Option<Arc<Webhooks>>) -> Self {
        Self {
            context: Arc::new(Context::here(supervisor.via("cluster"), webhooks)),
        }
    }

    /// Whether this node runs `token` now.
    pub fn runs(&self, token: &str) -> bool {
        self.context.supervisor.status(token).is_ok()
    }

    /// Carries out `op` here and returns the reply (its id is null).
    pub async fn answer(&self, op: Op) -> Reply {
        handle_here(&self.context, Value::Null, op).await
    }
}

/// `list` across the cluster: this node's sessions and every other node's, each marked with
/// its node; the sessions nobody reported are listed apart.
pub(crate) fn merge_lists(me: &str, mine: ListView, gathered: &Gathered) -> ListView {
    let mut sessions: Vec<SessionView> = mark(mine.sessions, me);
    for (node, reply) in &gathered.replies {
        let theirs = reply
            .result
            .clone()
            .and_then(|r| serde_json::from_value::<ListView>(r).ok());
        if let Some(theirs) = theirs {
            sessions.extend(mark(theirs.sessions, node));
        }
    }
    sessions.sort_by(|a, b| a.token.cmp(&b.token));
    sessions.dedup_by(|a, b| a.token == b.token);
    let listed: std::collections::BTreeSet<&str> =
        sessions.iter().map(|s| s.token.as_str()).collect();
    let unplaced = gathered
        .placements
        .iter()
        .filter(|(token, _)| !listed.contains(token.as_str()))
        .map(|(token, node)| UnplacedView {
            token: token.clone(),
            node: node.clone(),
        })
        .collect();
    let mut counts = BTreeMap::new();
    for s in &sessions {
        *counts.entry(s.state.clone()).or_insert(0) += 1;
    }
    ListView {
        sessions,
        counts,
        unplaced,
        incomplete: None,
    }
}

fn mark(sessions: Vec<SessionView>, node: &str) -> Vec<SessionView> {
    sessions
        .into_iter()
        .map(|mut s| {
            s.node.get_or_insert_with(|| node.to_owned());
            s
        })
        .collect()
}

/// `health` across the cluster: every live node's status and sessions, and the cluster's
/// totals.
pub(crate) fn merge_health(me: &str, mine: HealthView, gathered: &Gathered) -> HealthView {
    let mut total = mine.clone();
    total.nodes.insert(
        me.to_owned(),
        NodeHealthView {
            status: mine.status.clone(),
            sessions: mine.sessions,
        },
    );
    for (node, reply) in &gathered.replies {
        let theirs = reply
            .result
            .clone()
            .and_then(|r| serde_json::from_value::<HealthView>(r).ok());
        let entry = match (theirs, &reply.error) {
            (Some(theirs), _) => {
                total.sessions += theirs.sessions;
                for (state, n) in &theirs.counts {
                    *total.counts.entry(state.clone()).or_insert(0) += n;
                }
                NodeHealthView {
                    status: theirs.status,
                    sessions: theirs.sessions,
                }
            }
            (None, Some(error)) => NodeHealthView {
                status: error.message.clone(),
                sessions: 0,
            },
            (None, None) => NodeHealthView {
                status: "an answer that is not a health report".into(),
                sessions: 0,
            },
        };
        total.nodes.insert(node.clone(), entry);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn view(token: &str, state: &str) -> SessionView {
        serde_json::from_value(serde_json::json!({
            "token": token, "name": token, "state": state, "reason": null,
            "desired": "running", "attempts": 0, "jid": null, "account_name": null,
            "created_at": "2026-01-01T00:00:00Z", "state_since": "2026-01-01T00:00:00Z",
            "next_retry_at": null, "banned_until": null, "qr": null, "pair_code": null,
            "counters": {"connects": 0, "disconnects": 0, "restarts": 0}, "proxy": null,
        }))
        .unwrap()
    }

    fn list(sessions: Vec<SessionView>) -> ListView {
        ListView {
            sessions,
            counts: BTreeMap::new(),
            unplaced: Vec::new(),
            incomplete: None,
        }
    }

    #[test]
    fn a_cluster_list_marks_each_session_with_its_node_and_names_the_unreported() {
        let gathered = Gathered {
            replies: vec![
                (
                    "b".into(),
                    Reply::ok(Value::Null, list(vec![view("s2", "connected")])),
                ),
                (
                    "c".into(),
                    Reply::err(
                        Value::Null,
                        ErrorBody::new(ErrorCode::Unavailable, "no answer"),
                    ),
                ),
            ],
            placements: vec![
                ("s1".into(), Some("a".into())),
                ("s2".into(), Some("b".into())),
                ("s3".into(), Some("c".into())),
                ("s4".into(), None),
            ],
        };
        let merged = merge_lists("a", list(vec![view("s1", "stopped")]), &gathered);
        let nodes: Vec<(&str, Option<&str>)> = merged
            .sessions
            .iter()
            .map(|s| (s.token.as_str(), s.node.as_deref()))
            .collect();
        assert_eq!(nodes, [("s1", Some("a")), ("s2", Some("b"))]);
        assert_eq!(
            merged.unplaced,
            [
                UnplacedView {
                    token: "s3".into(),
                    node: Some("c".into())
                },
                UnplacedView {
                    token: "s4".into(),
                    node: None
                }
            ]
        );
        assert_eq!(merged.counts.get("connected"), Some(&1));
        assert_eq!(merged.counts.get("stopped"), Some(&1));
    }

    #[test]
    fn cluster_health_sums_the_nodes_that_answered_and_says_why_others_did_not() {
        let health = |sessions: usize| HealthView {
            status: "ok".into(),
            version: "1".into(),
            uptime_secs: 1,
            sessions,
            counts: BTreeMap::from([("connected".to_owned(), sessions)]),
            nodes: BTreeMap::new(),
            incomplete: None,
        };
        let gathered = Gathered {
            replies: vec![
                ("b".into(), Reply::ok(Value::Null, health(3))),
                (
                    "c".into(),
                    Reply::err(
                        Value::Null,
                        ErrorBody::new(ErrorCode::Unavailable, "did not answer"),
                    ),
                ),
            ],
            placements: Vec::new(),
        };
        let merged = merge_health("a", health(2), &gathered);
        assert_eq!(merged.sessions, 5);
        assert_eq!(merged.counts.get("connected"), Some(&5));
        assert_eq!(merged.nodes["a"].sessions, 2);
        assert_eq!(merged.nodes["b"].status, "ok");
        assert_eq!(merged.nodes["c"].status, "did not answer");
        assert_eq!(merged.nodes["c"].sessions, 0);
    }
}
