//! The lease protocol's statements against a real PostgreSQL: claims only from released or
//! dead owners, reaps that lose to renewals, and fence-checked writes that a deposed node
//! cannot make.

mod support;

use std::time::Duration;

use support::postgres::Postgres;
use warden_cluster::{ClusterError, NodeKey, Pg, check_fence};

const TIMEOUT: Duration = Duration::from_secs(5);

fn key(node: &str, incarnation: i64) -> NodeKey {
    NodeKey {
        node: node.to_owned(),
        incarnation,
    }
}

async fn connect(pg: &Postgres) -> Pg {
    let db = Pg::connect(&pg.url(), TIMEOUT).await.unwrap();
    db.migrate().await.unwrap();
    db
}

/// A write of a session's data, the way every store write goes: the fence is checked in the
/// same transaction.
async fn fenced_write(
    db: &mut Pg,
    me: &NodeKey,
    token: &str,
    fence: i64,
    value: &str,
) -> Result<(), ClusterError> {
    let tx = db.client_mut().transaction().await?;
    check_fence(&tx, me, token, fence).await?;
    tx.execute(
        "INSERT INTO creds (token, value) VALUES ($1, $2) \
         ON CONFLICT (token) DO UPDATE SET value = excluded.value",
        &[&token, &value],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn creds(db: &Pg, token: &str) -> Option<String> {
    db.client()
        .query_opt("SELECT value FROM creds WHERE token = $1", &[&token])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Registers `a` and `b` (each through its own connection), adds `s1`, and gives it to `a`
/// under fence 1.
async fn a_owns_s1(a_db: &Pg, b_db: &Pg) -> (NodeKey, NodeKey) {
    let (a, b) = (key("a", 1), key("b", 2));
    a_db.register(&a, None).await.unwrap();
    b_db.register(&b, None).await.unwrap();
    a_db.add_session("s1").await.unwrap();
    assert_eq!(a_db.claim(&a, "s1", 0).await.unwrap(), Some(1));
    (a, b)
}

#[tokio::test]
async fn a_deposed_node_cannot_write_and_cannot_claim() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let mut a_db = connect(&server).await;
    let mut b_db = connect(&server).await;
    a_db.client_mut()
        .batch_execute("CREATE TABLE creds (token text PRIMARY KEY, value text NOT NULL)")
        .await
        .unwrap();
    let (a, b) = (key("a", 1), key("b", 2));
    a_db.register(&a, None).await.unwrap();
    b_db.register(&b, None).await.unwrap();
    assert!(a_db.add_session("s1").await.unwrap());
    assert!(!b_db.add_session("s1").await.unwrap(), "added twice");

    // a claims it, writes under fence 1.
    assert_eq!(a_db.claim(&a, "s1", 0).await.unwrap(), Some(1));
    fenced_write(&mut a_db, &a, "s1", 1, "from a")
        .await
        .unwrap();
    // b cannot claim from a live owner, nor write under a's fence.
    assert_eq!(b_db.claim(&b, "s1", 1).await.unwrap(), None);
    assert!(b_db.claimable().await.unwrap().is_empty());
    assert!(matches!(
        fenced_write(&mut b_db, &b, "s1", 1, "from b").await,
        Err(ClusterError::StaleFence { .. })
    ));

    // b declares a dead (a's beat stood still at 0), and claims under fence 2.
    let beat = a_db
        .nodes()
        .await
        .unwrap()
        .iter()
        .find(|n| n.key == a)
        .unwrap()
        .beat;
    assert!(b_db.reap(&a, beat).await.unwrap());
    assert_eq!(b_db.claimable().await.unwrap(), vec![("s1".to_owned(), 1)]);
    assert_eq!(b_db.claim(&b, "s1", 1).await.unwrap(), Some(2));

    // a, deposed: its write under fence 1 is refused, its renewal says it is dead, and it
    // can claim nothing even with the right fence.
    let stale = fenced_write(&mut a_db, &a, "s1", 1, "stale").await;
    assert_eq!(
        stale,
        Err(ClusterError::StaleFence {
            token: "s1".to_owned(),
            fence: 1
        })
    );
    assert_eq!(a_db.renew(&a).await, Err(ClusterError::Reaped));
    b_db.release(&b, "s1", 2).await.unwrap();
    assert_eq!(
        a_db.claim(&a, "s1", 2).await.unwrap(),
        None,
        "a dead incarnation claimed"
    );
    assert_eq!(creds(&b_db, "s1").await.as_deref(), Some("from a"));
    // b got it back from the release, and writes.
    assert_eq!(b_db.claim(&b, "s1", 2).await.unwrap(), Some(3));
    fenced_write(&mut b_db, &b, "s1", 3, "from b")
        .await
        .unwrap();
    assert_eq!(creds(&a_db, "s1").await.as_deref(), Some("from b"));
}

#[tokio::test]
async fn a_reap_loses_to_a_renewal_it_did_not_see() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let db = connect(&server).await;
    let a = key("a", 7);
    db.register(&a, None).await.unwrap();
    assert_eq!(db.renew(&a).await.unwrap(), 1);
    // The reaper saw beat 0; a renewed since.
    assert!(!db.reap(&a, 0).await.unwrap());
    assert_eq!(db.renew(&a).await.unwrap(), 2);
    assert!(db.reap(&a, 2).await.unwrap());
    assert!(!db.reap(&a, 2).await.unwrap(), "reaped twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_racing_claimers_exactly_one_wins_each_session() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let mut setup = connect(&server).await;
    let (a, b) = (key("a", 1), key("b", 2));
    setup.register(&a, None).await.unwrap();
    setup.register(&b, None).await.unwrap();
    let tokens: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    for t in &tokens {
        setup.add_session(t).await.unwrap();
    }
    // Every row held by a transaction while both claimers line up behind it, in the same
    // order: when it ends, they race on each session.
    let hold = setup.client_mut().transaction().await.unwrap();
    hold.execute("SELECT 1 FROM warden_session FOR UPDATE", &[])
        .await
        .unwrap();
    let race = |me: NodeKey, tokens: Vec<String>, url: String| async move {
        let db = Pg::connect(&url, Duration::from_secs(30)).await.unwrap();
        let mut won = Vec::new();
        for t in tokens {
            if db.claim(&me, &t, 0).await.unwrap().is_some() {
                won.push(t);
            }
        }
        won
    };
    let racer_a = tokio::spawn(race(a.clone(), tokens.clone(), server.url()));
    let racer_b = tokio::spawn(race(b.clone(), tokens.clone(), server.url()));
    // Both wait on the first row (read from the server's own view), then go.
    let watcher = Pg::connect(&server.url(), TIMEOUT).await.unwrap();
    while waiting_on_locks(&watcher).await < 2 {
        assert!(!racer_a.is_finished() && !racer_b.is_finished());
        tokio::task::yield_now().await;
    }
    hold.commit().await.unwrap();
    let (won_a, won_b) = (racer_a.await.unwrap(), racer_b.await.unwrap());
    assert_eq!(won_a.len() + won_b.len(), tokens.len());
    assert!(
        won_a.iter().all(|t| !won_b.contains(t)),
        "a session claimed twice"
    );
    eprintln!("a won {}, b won {}", won_a.len(), won_b.len());
    for owner in setup.owners().await.unwrap() {
        assert_eq!(owner.fence, 1, "{}", owner.token);
    }
}

/// Backends of the server waiting for a lock.
async fn waiting_on_locks(db: &Pg) -> i64 {
    db.client()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_claim_waits_for_the_deposed_owners_write_in_flight() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let mut a_db = connect(&server).await;
    let b_db = connect(&server).await;
    a_db.client_mut()
        .batch_execute("CREATE TABLE creds (token text PRIMARY KEY, value text NOT NULL)")
        .await
        .unwrap();
    let (a, _b) = a_owns_s1(&a_db, &b_db).await;

    // a's write has checked its fence and is not committed yet when b deposes a.
    let tx = a_db.client_mut().transaction().await.unwrap();
    check_fence(&tx, &a, "s1", 1).await.unwrap();
    assert!(b_db.reap(&a, 0).await.unwrap());
    let b_url = server.url();
    let b_claims = tokio::spawn(async move {
        let db = Pg::connect(&b_url, TIMEOUT).await.unwrap();
        db.claim(&key("b", 2), "s1", 1).await
    });
    // The claim waits on the row a's write holds (read from the server's own view).
    let watcher = Pg::connect(&server.url(), TIMEOUT).await.unwrap();
    while waiting_on_locks(&watcher).await < 1 {
        assert!(
            !b_claims.is_finished(),
            "the claim did not wait for the write"
        );
        tokio::task::yield_now().await;
    }
    tx.execute("INSERT INTO creds VALUES ('s1', 'last of a')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Then the claim goes through, and a's next write is refused.
    assert_eq!(b_claims.await.unwrap().unwrap(), Some(2));
    assert!(matches!(
        fenced_write(&mut a_db, &a, "s1", 1, "too late").await,
        Err(ClusterError::StaleFence { .. })
    ));
    assert_eq!(creds(&b_db, "s1").await.as_deref(), Some("last of a"));
}

#[tokio::test]
async fn a_write_left_open_by_a_cut_off_node_does_not_block_the_takeover() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let proxy = support::proxy::CutProxy::start(server.port()).await;
    // a's session ends an idle transaction after twice its 0.5 s deadline.
    let mut a_db = Pg::connect(&server.url_via(proxy.port()), Duration::from_millis(500))
        .await
        .unwrap();
    a_db.migrate().await.unwrap();
    let b_db = connect(&server).await;
    let (a, b) = a_owns_s1(&a_db, &b_db).await;

    // a is cut off in the middle of a write: its transaction holds the row.
    let tx = a_db.client_mut().transaction().await.unwrap();
    check_fence(&tx, &a, "s1", 1).await.unwrap();
    proxy.cut();
    assert!(b_db.reap(&a, 0).await.unwrap());
    // The server ends a's idle transaction, and the claim goes through (b waits up to its
    // own lock timeout, 2.5 s).
    assert_eq!(b_db.claim(&b, "s1", 1).await.unwrap(), Some(2));
    drop(tx);
}
