//! Nodes over a real PostgreSQL: placement, takeover after a crash, self-fencing when cut off
//! from the database, graceful hand-over, caps and rebalancing. Every wait is on the nodes'
//! own ownership and events; the only bound is a failure deadline.
//!
//! Exclusivity is checked throughout: whenever any node's ownership changes, no session may
//! be in two nodes' ownership at once.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::postgres::Postgres;
use support::proxy::CutProxy;
use tokio::sync::watch;
use warden_cluster::{FenceReason, Node, NodeConfig, NodeEvent, Ownership, Pg};

/// A failure deadline for every wait, far above what any step needs.
const WITHIN: Duration = Duration::from_secs(30);

/// One test at a time: each runs its own PostgreSQL and two or three nodes on a 0.8 s
/// margin, which two cores shared by several such tests could starve.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(url: &str, name: &str, cap: Option<usize>) -> Node {
    Node::start(NodeConfig {
        database_url: url.to_owned(),
        node: name.to_owned(),
        addr: None,
        cap,
        timing: support::fast(),
        tls: None,
    })
    .await
    .unwrap()
}

async fn add_sessions(node: &Node, n: usize) -> Vec<String> {
    let tokens: Vec<String> = (0..n).map(|i| format!("s{i:03}")).collect();
    for t in &tokens {
        assert!(node.add_session(t).await.unwrap());
    }
    tokens
}

/// Waits until `done` holds over the nodes' ownerships, checking at every change that no
/// session is owned twice.
async fn until(nodes: &[&Node], what: &str, done: impl Fn(&[Ownership]) -> bool) -> Vec<Ownership> {
    let mut watchers: Vec<watch::Receiver<Ownership>> =
        nodes.iter().map(|n| n.ownership()).collect();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let now: Vec<Ownership> = watchers
            .iter_mut()
            .map(|w| w.borrow_and_update().clone())
            .collect();
        assert_exclusive(&now);
        if done(&now) {
            return now;
        }
        let changes = watchers.iter_mut().map(|w| Box::pin(w.changed()));
        tokio::select! {
            _ = futures_select(changes) => {}
            _ = tokio::time::sleep_until(deadline) => panic!("not within {WITHIN:?}: {what}: {now:#?}"),
        }
    }
}

async fn futures_select<F: std::future::Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(|cx| {
        let mut futures = futures.iter_mut();
        futures
            .find_map(|f| std::pin::Pin::new(f).poll(cx).is_ready().then_some(()))
            .map_or(std::task::Poll::Pending, std::task::Poll::Ready)
    })
    .await
}

fn assert_exclusive(ownerships: &[Ownership]) {
    let mut seen = HashSet::new();
    for o in ownerships {
        for token in o.sessions.keys() {
            assert!(
                seen.insert(token.clone()),
                "{token} owned by two nodes at once"
            );
        }
    }
}

fn total(ownerships: &[Ownership]) -> usize {
    ownerships.iter().map(|o| o.sessions.len()).sum()
}

/// Every event of a node, with when it was seen.
fn record(node: &Node) -> Arc<Mutex<Vec<(Instant, NodeEvent)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut events = node.subscribe();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            sink.lock().unwrap().push((Instant::now(), event));
        }
    });
    log
}

/// Adds `n` sessions through the first node and waits until they are spread over all of
/// `nodes`, each holding some.
async fn placed(nodes: &[&Node], n: usize) -> Vec<Ownership> {
    add_sessions(nodes[0], n).await;
    until(nodes, "the sessions placed on every node", |o| {
        total(o) == n && o.iter().all(|o| !o.sessions.is_empty())
    })
    .await
}

async fn fences(url: &str) -> BTreeMap<String, i64> {
    let db = Pg::connect(url, Duration::from_secs(5)).await.unwrap();
    db.owners()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.token, o.fence))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nodes_sessions_move_to_the_others_and_only_those() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.url();
    let n1 = start(&url, "n1", None).await;
    let n2 = start(&url, "n2", None).await;
    let n3 = start(&url, "n3", None).await;
    let survivors_log = [record(&n1), record(&n3)];
    let placed = placed(&[&n1, &n2, &n3], 30).await;
    let on_n2: Vec<String> = placed[1].sessions.keys().cloned().collect();

    let crashed = Instant::now();
    drop(n2); // no release: as kill -9
    until(&[&n1, &n3], "the survivors own all 30", |o| total(o) == 30).await;
    let took = crashed.elapsed();
    eprintln!(
        "takeover of {} sessions after a crash: {took:?}",
        on_n2.len()
    );

    // Each of n2's sessions was claimed once more; nobody else's moved.
    for (token, fence) in fences(&url).await {
        let expected = if on_n2.contains(&token) { 2 } else { 1 };
        assert_eq!(fence, expected, "{token}");
    }
    // Through n2 being declared dead, once.
    let reaped: usize = survivors_log
        .iter()
        .map(|log| {
            log.lock()
                .unwrap()
                .iter()
                .filter(|(_, e)| matches!(e, NodeEvent::Reaped { peer } if peer.node == "n2"))
                .count()
        })
        .sum();
    assert_eq!(reaped, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_fences_itself_before_anyone_claims() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.url();
    let proxy = CutProxy::start(server.port()).await;
    let cut_off = start(&server.url_via(proxy.port()), "n1", None).await;
    let n2 = start(&url, "n2", None).await;
    let n3 = start(&url, "n3", None).await;
    let logs = [record(&cut_off), record(&n2), record(&n3)];
    let placed = placed(&[&cut_off, &n2, &n3], 30).await;
    let first_incarnation = placed[0].incarnation.unwrap();
    let on_n1: HashSet<String> = placed[0].sessions.keys().cloned().collect();

    proxy.cut();
    let cut = Instant::now();
    until(&[&cut_off, &n2, &n3], "n2 and n3 own all 30", |o| {
        o[1].sessions.len() + o[2].sessions.len() == 30
    })
    .await;

    let fenced_at = logs[0]
        .lock()
        .unwrap()
        .iter()
        .find_map(|(at, e)| match e {
            NodeEvent::Fenced { incarnation, why } if *incarnation == first_incarnation => {
                assert_eq!(*why, FenceReason::Deadline);
                Some(*at)
            }
            _ => None,
        })
        .expect("the cut-off node fenced itself");
    let first_claim = logs[1..]
        .iter()
        .flat_map(|log| log.lock().unwrap().clone())
        .filter_map(|(at, e)| match e {
            NodeEvent::Claimed { token, .. } if on_n1.contains(&token) => Some(at),
            _ => None,
        })
        .min()
        .expect("n1's sessions were claimed");
    assert!(
        fenced_at < first_claim,
        "a peer claimed before the cut-off node fenced itself"
    );
    eprintln!(
        "cut at 0: fenced at {:?}, first claim at {:?} (margin {:?})",
        fenced_at - cut,
        first_claim - cut,
        first_claim - fenced_at
    );
    assert!(cut_off.ownership().borrow().sessions.is_empty());
    assert_eq!(cut_off.may_dial(on_n1.iter().next().unwrap()), None);

    // Healed, it comes back as a new incarnation; the old one stays dead.
    proxy.heal();
    let mut lease = cut_off.lease();
    let back = tokio::time::timeout(
        WITHIN,
        lease.wait_for(|v| v.incarnation != first_incarnation && v.lease.deadline().is_some()),
    )
    .await
    .expect("the node joins again once healed")
    .unwrap()
    .incarnation;
    assert_ne!(back, first_incarnation);
    let db = Pg::connect(&url, Duration::from_secs(5)).await.unwrap();
    let old = db
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.key.incarnation == first_incarnation);
    assert!(
        old.is_none_or(|n| n.dead),
        "the old incarnation is alive again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_hands_everything_over_without_waiting_for_death() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.url();
    let n1 = start(&url, "n1", None).await;
    let n2 = start(&url, "n2", None).await;
    let n3 = start(&url, "n3", None).await;
    let logs = [record(&n1), record(&n3)];
    let placed = placed(&[&n1, &n2, &n3], 30).await;
    let on_n2 = placed[1].sessions.len();

    let left = Instant::now();
    assert_eq!(n2.leave().await.unwrap(), on_n2 as u64);
    until(&[&n1, &n3], "the others own all 30", |o| total(o) == 30).await;
    eprintln!(
        "hand-over of {on_n2} sessions on leave: {:?}",
        left.elapsed()
    );
    for log in &logs {
        assert!(
            !log.lock()
                .unwrap()
                .iter()
                .any(|(_, e)| matches!(e, NodeEvent::Reaped { .. })),
            "the hand-over waited for a death"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_claims_past_its_cap() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.url();
    let n1 = start(&url, "n1", Some(4)).await;
    let n2 = start(&url, "n2", Some(4)).await;
    add_sessions(&n1, 20).await;
    let full = until(&[&n1, &n2], "both nodes at their cap", |o| {
        o.iter().all(|o| o.sessions.len() == 4)
    })
    .await;
    assert_eq!(total(&full), 8);
    let db = Pg::connect(&url, Duration::from_secs(5)).await.unwrap();
    assert_eq!(db.claimable().await.unwrap().len(), 12);
    // A third node takes what is left, up to its own cap.
    let n3 = start(&url, "n3", Some(10)).await;
    until(&[&n1, &n2, &n3], "the third node at its cap", |o| {
        o[2].sessions.len() == 10
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_gets_its_share_through_gentle_rebalancing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.url();
    let n1 = Arc::new(start(&url, "n1", None).await);
    add_sessions(&n1, 20).await;
    until(&[&n1], "n1 owns all 20", |o| total(o) == 20).await;

    // The embedder's part: on a suggestion, close the session, then release it.
    let mut events = n1.subscribe();
    let embedder = n1.clone();
    let suggested = Arc::new(Mutex::new(0usize));
    let suggestions = suggested.clone();
    let hand_over = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let NodeEvent::Rebalance { token } = event {
                *suggestions.lock().unwrap() += 1;
                if let Err(e) = embedder.release(&token).await {
                    eprintln!("release of {token} failed: {e}");
                }
            }
        }
    });
    let joined = Instant::now();
    let n2 = start(&url, "n2", None).await;
    let balanced = until(&[&n1, &n2], "n2 has its share", |o| {
        o[1].sessions.len() >= 9
    })
    .await;
    let took = joined.elapsed();
    hand_over.abort();
    assert_eq!(total(&balanced), 20);
    // At most one hand-over suggested per second, over the whole of it.
    let suggested = *suggested.lock().unwrap();
    assert!(
        suggested as f64 <= took.as_secs_f64() + 1.0,
        "{suggested} hand-overs suggested in {took:?}"
    );
}

#[tokio::test]
async fn a_session_the_embedder_declines_to_move_is_passed_over_for_others() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.url();
    let n1 = start(&url, "n1", None).await;
    add_sessions(&n1, 20).await;
    until(&[&n1], "n1 owns all 20", |o| total(o) == 20).await;
    let mut events = n1.subscribe();
    let releaser = n1.releaser();
    let _n2 = start(&url, "n2", None).await;
    // The embedder declines every suggestion (a QR code on show, say): each is a new session,
    // and nothing moves.
    let mut suggested = std::collections::BTreeSet::new();
    let wait = async {
        while suggested.len() < 3 {
            if let Ok(NodeEvent::Rebalance { token }) = events.recv().await {
                assert!(suggested.insert(token.clone()), "{token} suggested again");
                releaser.decline(&token).await;
            }
        }
    };
    tokio::time::timeout(WITHIN, wait)
        .await
        .expect("three different suggestions");
    assert_eq!(n1.ownership().borrow().sessions.len(), 20, "nothing moved");
}
