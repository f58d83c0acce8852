//! Two nodes of a cluster in one process, over a real PostgreSQL (skipped where none is
//! installed): each a `warden_cluster::Node`, a supervisor on the shared store under the
//! node's leases, and `warden::cluster::follow` between them; one scripted WhatsApp link for
//! both, which counts the live connections of each session across the two nodes.
//!
//! - Sessions added to the cluster are claimed, adopted and connected, each on one node.
//! - A node that stops (its tasks gone, as in a crash) lets go of everything here, and the
//!   other node, once it declared it dead, runs every session; never two connections of one.
//! - A node that leaves gracefully closes its sessions, then hands them back: the other node
//!   runs them without having to declare it dead.

#[path = "../../warden-cluster/tests/support/postgres.rs"]
mod pg_server;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pg_server::Postgres;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use warden::cluster::{Adopted, NodeLeases, follow, hand_over};
use warden_cluster::{Node, NodeConfig, NodeEvent, Timing};
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::store::SessionRecord;
use warden_core::{AdmissionConfig, Desired, SessionState, Supervisor, SupervisorConfig};
use warden_store::{PgDb, PgOptions, Shared, Store};

/// Five times faster than the defaults (the margin T − D − P stays positive).
fn timing() -> Timing {
    Timing {
        renew_every: Duration::from_millis(400),
        fence_after: Duration::from_secs(2),
        dead_after: Duration::from_secs(3),
        poll_every: Duration::from_millis(200),
        min_remaining: Duration::from_millis(600),
        grace: Duration::from_millis(600),
        statement_timeout: Duration::from_millis(400),
    }
}

/// How long any wait may take, even on a slow machine.
const PATIENT: Duration = Duration::from_secs(60);
const SESSIONS: [&str; 6] = ["s1", "s2", "s3", "s4", "s5", "s6"];

/// One node: its membership, its supervisor, and the task that follows one with the other.
struct Member {
    node: Node,
    events: broadcast::Receiver<NodeEvent>,
    supervisor: Supervisor,
    follower: JoinHandle<()>,
    adopted: Adopted,
    _dir: tempfile::TempDir,
}

async fn member(server: &Postgres, name: &str, link: &ScriptedLink) -> Member {
    let (node, events) = Node::start_with_events(NodeConfig {
        database_url: server.url(),
        node: name.to_owned(),
        addr: None,
        cap: None,
        timing: timing(),
        tls: None,
    })
    .await
    .unwrap();
    let url = server.url();
    let db = tokio::task::spawn_blocking(move || PgDb::connect(&url, &PgOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let adopted = Adopted::default();
    let store = Store::Shared(Shared {
        db,
        leases: Arc::new(NodeLeases {
            gate: node.gate(),
            adopted: adopted.clone(),
        }),
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = SupervisorConfig::new(dir.path()).with_db(store);
    config.admission = AdmissionConfig {
        max_in_flight: 100,
        per_second: 1_000.0,
        burst: 100,
    };
    let (supervisor, _) = Supervisor::start(config, Arc::new(link.clone()))
        .await
        .unwrap();
    let follower = tokio::spawn(follow(
        supervisor.clone(),
        node.ownership(),
        adopted.clone(),
    ));
    Member {
        node,
        events,
        supervisor,
        follower,
        adopted,
        _dir: dir,
    }
}

/// Adds the sessions to the cluster, meant to run.
async fn add_sessions(server: &Postgres) {
    let url = server.url();
    let db = tokio::task::spawn_blocking(move || PgDb::connect(&url, &PgOptions::default()))
        .await
        .unwrap()
        .unwrap();
    for token in SESSIONS {
        let mut record = SessionRecord::new(token.into(), SystemTime::now());
        record.desired = Desired::Running;
        assert!(
            db.create_session(token, &record.encode().unwrap())
                .await
                .unwrap()
        );
    }
}

/// The sessions connected on `supervisor`.
fn connected(supervisor: &Supervisor) -> BTreeSet<String> {
    supervisor
        .list()
        .sessions
        .into_iter()
        .filter(|info| info.state == SessionState::Connected)
        .map(|info| info.token.to_string())
        .collect()
}

/// Waits (on their events, never on a clock) until every session is connected on one of
/// `supervisors`; returns each one's share.
async fn until_all_connected(supervisors: &[&Supervisor]) -> Vec<BTreeSet<String>> {
    let mut streams: Vec<_> = supervisors.iter().map(|s| s.subscribe()).collect();
    let waiting = async {
        loop {
            let shares: Vec<BTreeSet<String>> = supervisors.iter().map(|s| connected(s)).collect();
            let all: BTreeSet<&String> = shares.iter().flatten().collect();
            if all.len() == SESSIONS.len() {
                return shares;
            }
            let next =
                futures_util::future::select_all(streams.iter_mut().map(|rx| Box::pin(rx.recv())));
            match next.await.0 {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("a supervisor stopped"),
            }
        }
    };
    tokio::time::timeout(PATIENT, waiting)
        .await
        .expect("every session connected")
}

/// Whether `events` (drained now) say this node declared `peer` dead.
fn reaped(events: &mut broadcast::Receiver<NodeEvent>, peer: &str) -> bool {
    let mut seen = false;
    while let Ok(event) = events.try_recv() {
        seen |= matches!(event, NodeEvent::Reaped { peer: ref key } if key.node == peer);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_lets_go_and_the_other_runs_every_session_never_two_at_once() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let link = ScriptedLink::new(Script::login("1@s.whatsapp.net"));
    let a = member(&server, "a", &link).await;
    let mut b = member(&server, "b", &link).await;
    add_sessions(&server).await;
    let shares = until_all_connected(&[&a.supervisor, &b.supervisor]).await;
    assert!(
        shares[0].is_disjoint(&shares[1]),
        "each session on one node: {shares:?}"
    );

    // a stops as a crash would: its node is gone, so it holds nothing any more.
    let on_a = shares[0].clone();
    assert!(
        !on_a.is_empty(),
        "placement gives a some sessions: {shares:?}"
    );
    drop(a.node);
    let _ = a.follower.await;
    for token in &on_a {
        assert_eq!(link.stats(token).live, 0, "{token} is closed on a");
    }
    let shares = until_all_connected(&[&b.supervisor]).await;
    assert_eq!(shares[0].len(), SESSIONS.len());
    assert!(
        reaped(&mut b.events, "a"),
        "b took over once a was declared dead"
    );
    assert_eq!(
        link.max_live_any(),
        1,
        "never two connections of one session"
    );
    a.supervisor.shutdown().await.unwrap();
    b.supervisor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_hands_its_sessions_over_without_being_declared_dead() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let link = ScriptedLink::new(Script::login("1@s.whatsapp.net"));
    let a = member(&server, "a", &link).await;
    let mut b = member(&server, "b", &link).await;
    add_sessions(&server).await;
    let shares = until_all_connected(&[&a.supervisor, &b.supervisor]).await;
    let on_a = shares[0].clone();
    assert!(
        !on_a.is_empty(),
        "placement gives a some sessions: {shares:?}"
    );

    let handed = hand_over(&a.supervisor, a.node, a.follower, &a.adopted)
        .await
        .unwrap();
    assert_eq!(handed, on_a.len() as u64);
    for token in &on_a {
        assert_eq!(
            link.stats(token).live,
            0,
            "{token} closed before it was handed over"
        );
    }
    until_all_connected(&[&b.supervisor]).await;
    assert!(
        !reaped(&mut b.events, "a"),
        "handed over, never declared dead"
    );
    assert_eq!(
        link.max_live_any(),
        1,
        "never two connections of one session"
    );
    a.supervisor.shutdown().await.unwrap();
    b.supervisor.shutdown().await.unwrap();
}
