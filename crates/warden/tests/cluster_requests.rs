//! Which requests a node takes, in one process over a real PostgreSQL (skipped where none is
//! installed): `warden::peers::answer_requests` of node `a`, whose supervisor runs `shop1`,
//! with requests written straight into the cluster's table.
//!
//! - While `a` holds `shop1`'s lease, a request about `shop1` is taken and answered.
//! - Once `a` is cut off from the database and has fenced itself, the database still names
//!   it `shop1`'s owner (no other node declared it dead) and its supervisor still runs the
//!   session; yet a request about `shop1` is left for the session's next owner, untaken,
//!   while a request addressed to `a` itself is still answered.
//! - Many watchers of the cluster on node `b` (each a feed that looks once a second, as every
//!   socket `watch` and `GET /events` has) share its looks: their first looks together ask
//!   node `a` for its list once, not once each.

#[path = "common/cluster.rs"]
mod cluster_support;
mod common;
#[path = "../../warden-cluster/tests/support/proxy.rs"]
mod proxy;

use std::sync::Arc;

use cluster_support::{LIMIT, Postgres, add_tokens};
use proxy::CutProxy;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use warden::peers::{ClusterPeers, RequestLink, answer_requests};
use warden_cluster::requests::{ANSWERED, Addressee, Withdrawn};
use warden_cluster::{Node, NodeConfig, NodeEvent, Pg, Timing};
use warden_control::{ElsewhereFeed, EventLine, LocalAnswers, Op, Peers, Reply};
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{Supervisor, SupervisorConfig};

/// Five times faster than the defaults: fenced 2 s after its last renewal.
fn timing() -> Timing {
    Timing::scaled(0.2)
}

/// Waits for the node's first event that `pick` takes.
async fn node_event<T>(
    events: &mut broadcast::Receiver<NodeEvent>,
    pick: impl Fn(&NodeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(LIMIT, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("the node stopped"),
            }
        }
    })
    .await
    .expect("the node's event came")
}

/// Asks `op` of `to` and waits for its answer, woken by the answers' notices.
async fn answered(pg: &Pg, to: Addressee<'_>, op: &Op) -> Reply {
    let mut notices = pg.notices();
    let id = pg
        .ask(to, &serde_json::to_string(op).unwrap(), LIMIT)
        .await
        .unwrap()
        .expect("the session is in the cluster");
    let answer = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(answer) = pg.answer_to(id).await.unwrap() {
                return answer;
            }
            let _ = notices.recv().await;
        }
    })
    .await
    .expect("answered in time");
    serde_json::from_str(&answer).unwrap()
}

/// Node `a`, reaching the database through `proxy` for its leases, holding `shop1` (added to
/// the cluster) and running it in its supervisor, answering requests until `stop`.
struct NodeA {
    node: Node,
    events: broadcast::Receiver<NodeEvent>,
    supervisor: Supervisor,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn node_a(server: &Postgres, proxy: &CutProxy) -> NodeA {
    add_tokens(server, &["shop1".to_owned()]).await;
    let (node, mut events) = Node::start_with_events(NodeConfig {
        database_url: server.url_via(proxy.port()),
        node: "a".into(),
        addr: None,
        cap: None,
        timing: timing(),
        tls: None,
    })
    .await
    .unwrap();
    node_event(&mut events, |e| match e {
        NodeEvent::Claimed { token, .. } if token == "shop1" => Some(()),
        _ => None,
    })
    .await;
    // Its supervisor runs the session (never connecting: the link's script is empty).
    let (supervisor, dir) = supervisor().await;
    supervisor.create(None, Some("shop1")).await.unwrap();
    let stop = CancellationToken::new();
    let http = warden_http::LocalHttp::new(
        supervisor.clone(),
        None,
        Arc::new(warden_http::Metrics::new()),
        1 << 20,
        LIMIT,
    );
    tokio::spawn(answer_requests(
        Arc::new(RequestLink::new(&server.url(), LIMIT, None)),
        LocalAnswers::new(supervisor.clone(), None),
        http,
        node.gate(),
        stop.clone(),
    ));
    NodeA {
        node,
        events,
        supervisor,
        stop,
        _dir: dir,
    }
}

/// A supervisor on a scripted link that never connects, in its own folder.
async fn supervisor() -> (Supervisor, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let link = ScriptedLink::new(Script::new());
    let (supervisor, _) = Supervisor::start(SupervisorConfig::new(dir.path()), Arc::new(link))
        .await
        .unwrap();
    (supervisor, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_lapsed_takes_no_request_about_its_sessions() {
    let Some(server) = Postgres::start() else {
        return;
    };
    // Node a reaches the database through a proxy the test can cut; its requests do not.
    let proxy = CutProxy::start(server.port()).await;
    let NodeA {
        node,
        mut events,
        supervisor,
        stop,
        _dir,
    } = node_a(&server, &proxy).await;

    let asker = Pg::connect(&server.url(), LIMIT).await.unwrap();
    asker.listen(ANSWERED).await.unwrap();
    let status = Op::Status {
        token: "shop1".into(),
    };
    let reply = answered(&asker, Addressee::Session("shop1"), &status).await;
    assert!(reply.ok, "answered while a holds the lease: {reply:?}");

    // Cut off: a fences itself; the database still names it the owner.
    proxy.cut();
    node_event(&mut events, |e| {
        matches!(e, NodeEvent::Fenced { .. }).then_some(())
    })
    .await;
    assert!(node.gate().held("shop1").is_none());
    assert_eq!(
        asker.placements().await.unwrap(),
        [("shop1".to_owned(), Some("a".to_owned()))]
    );
    assert!(
        supervisor.status("shop1").is_ok(),
        "still in the supervisor"
    );

    let about_session = asker
        .ask(
            Addressee::Session("shop1"),
            &serde_json::to_string(&status).unwrap(),
            LIMIT,
        )
        .await
        .unwrap()
        .expect("the session is in the cluster");
    // Asked later and answered: a has looked at the requests since the first was written.
    let to_node = answered(&asker, Addressee::Node("a"), &Op::List {}).await;
    assert!(to_node.ok, "{to_node:?}");
    assert_eq!(
        asker.withdraw(about_session).await.unwrap(),
        Withdrawn::Untaken,
        "a fenced node took a request about a session whose lease it lost"
    );
    stop.cancel();
    proxy.heal();
}

/// How many requests the cluster's table was ever given (its id sequence; one more is used).
async fn requests_so_far(pg: &Pg) -> i64 {
    pg.client()
        .query_one("SELECT nextval('warden_request_id_seq')", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchers_of_a_node_share_its_looks_at_the_cluster() {
    /// Watchers on node b.
    const WATCHERS: usize = 20;
    let Some(server) = Postgres::start() else {
        return;
    };
    let proxy = CutProxy::start(server.port()).await;
    let a = node_a(&server, &proxy).await;
    let (supervisor_b, _dir_b) = supervisor().await;
    let peers: Arc<dyn Peers> = Arc::new(ClusterPeers::new(
        Arc::new(RequestLink::new(&server.url(), LIMIT, None)),
        "b",
    ));
    let pg = Pg::connect(&server.url(), LIMIT).await.unwrap();
    let before = requests_so_far(&pg).await;
    let mut feeds: Vec<ElsewhereFeed> = (0..WATCHERS)
        .map(|_| ElsewhereFeed::every_session(supervisor_b.clone(), peers.clone()))
        .collect();
    for feed in &mut feeds {
        let lines = tokio::time::timeout(LIMIT, feed.next())
            .await
            .expect("a first look in time")
            .expect("the feed goes on");
        let [EventLine::Session { session }] = lines.as_slice() else {
            panic!("one session: {lines:?}");
        };
        assert_eq!(session.token, "shop1");
        assert_eq!(session.node.as_deref(), Some("a"));
    }
    // The requests since `before`, less the one `requests_so_far` uses itself.
    let asked = requests_so_far(&pg).await - before - 1;
    assert!(
        (1..=2).contains(&asked),
        "{WATCHERS} watchers' first looks asked node a for its list {asked} times"
    );
    a.stop.cancel();
}
