//! Credentials on PostgreSQL move with the session's lease (#16): a session paired by node a
//! logs in on node b from the stored credentials, without a new QR code, once a released it
//! and b claimed it; a, deposed, can no longer write them. The real supervisor and link of
//! each node (each with its own local database for session records), wa-rs clients, the fake
//! WhatsApp server, and a real PostgreSQL with `warden-cluster`'s leases.

mod support;

#[path = "../../warden-cluster/tests/support/postgres.rs"]
mod pg_server;

use std::sync::{Arc, Mutex};

use pg_server::Postgres;
use support::*;
use tokio::sync::mpsc;
use wa_rs_core::store::error::StoreError;
use wa_rs_core::store::traits::SignalStore;
use warden_cluster::{NodeKey, Pg};
use warden_core::{
    LifecycleEvent, LifecycleSink, Link, LinkError, OpenOptions, SessionEvent, SessionState,
    Supervisor, Token,
};
use warden_fakewa::{Plan, QrSpec, Scenario, Script, ServerEvent, Step};
use warden_store::{CredentialsDb, Db, Fence, PgDb, PgOptions};
use warden_whatsapp::store::SessionStore;
use warden_whatsapp::{Credentials, WaLink};

const PHONE: &str = "15550001616";
const TOKEN: &str = "shop1";
/// Longer than any test here.
const LONG: std::time::Duration = std::time::Duration::from_secs(120);
/// A QR code's life (the fake server's longest).
const QR: std::time::Duration = std::time::Duration::from_secs(30);

/// A node's credentials: on PostgreSQL, under the fence it holds (none: not its session).
#[derive(Debug)]
struct Leased {
    db: PgDb,
    fence: Mutex<Option<Fence>>,
}

impl Credentials for Leased {
    fn for_session(&self, _token: &Token) -> Option<CredentialsDb> {
        let fence = self.fence.lock().unwrap().clone()?;
        Some(CredentialsDb::Leased {
            db: self.db.clone(),
            fence,
        })
    }
}

/// The cluster's tables on `postgres`, and the session store beside them.
async fn tables_and_store(postgres: &Postgres) -> (Pg, PgDb) {
    let pg = Pg::connect(&postgres.url(), LIMIT).await.unwrap();
    pg.migrate().await.unwrap();
    let url = postgres.url();
    let store = tokio::task::spawn_blocking(move || PgDb::connect(&url, &PgOptions::default()))
        .await
        .unwrap()
        .unwrap();
    (pg, store)
}

/// Registers incarnation `incarnation` of node `name`.
async fn node(pg: &Pg, name: &str, incarnation: i64) -> NodeKey {
    let key = NodeKey {
        node: name.into(),
        incarnation,
    };
    pg.register(&key, None).await.unwrap();
    key
}

/// `me` claims `token` (added if new): the fence to write under.
async fn claim(pg: &Pg, me: &NodeKey, token: &str) -> Fence {
    pg.add_session(token).await.unwrap();
    let (_, seen) = pg
        .claimable()
        .await
        .unwrap()
        .into_iter()
        .find(|(t, _)| t == token)
        .expect("claimable");
    let fence = pg.claim(me, token, seen).await.unwrap().expect("claimed");
    Fence {
        node: me.node.clone(),
        incarnation: me.incarnation,
        fence,
    }
}

fn pairings(server: &warden_fakewa::FakeServer) -> usize {
    server
        .recorder()
        .inspect(|s| s.count(|r| matches!(r.event, ServerEvent::PairSent { .. })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_paired_on_one_node_logs_in_on_another_without_a_qr_code() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let (pg, store) = tables_and_store(&postgres).await;
    let (a, b) = (node(&pg, "a", 1).await, node(&pg, "b", 2).await);

    // Node a holds the lease, pairs the session and stops it.
    let fence_a = claim(&pg, &a, TOKEN).await;
    let on_a = Arc::new(Leased {
        db: store.clone(),
        fence: Mutex::new(Some(fence_a.clone())),
    });
    let server = server(PHONE, Plan::always(Scenario::login())).await;
    let mut h = Harness::with_credentials(server, on_a.clone()).await;
    h.paired(TOKEN, PHONE).await;
    assert_eq!(
        h.supervisor.stop(TOKEN).await.unwrap().state,
        SessionState::Stopped
    );
    let device = store
        .find_device(TOKEN)
        .await
        .unwrap()
        .expect("credentials on PostgreSQL");
    assert!(
        !has_credentials(&h.db, TOKEN).await,
        "nothing of the credentials in a's local database"
    );
    assert_eq!(pairings(&h.server), 1);

    // The lease moves to b.
    assert!(pg.release(&a, TOKEN, fence_a.fence).await.unwrap());
    *on_a.fence.lock().unwrap() = None;
    let fence_b = claim(&pg, &b, TOKEN).await;

    // Node b: its own supervisor, link and local database; the credentials from PostgreSQL.
    let dir_b = tempfile::tempdir().unwrap();
    let db_b = Db::open_in(dir_b.path()).unwrap();
    let on_b = Arc::new(Leased {
        db: store.clone(),
        fence: Mutex::new(Some(fence_b)),
    });
    let link_b = Arc::new(
        WaLink::new(wa_config(&h.server.url()), db_b.clone())
            .unwrap()
            .with_http_client(Arc::new(NoHttp))
            .with_credentials(on_b),
    );
    let (supervisor_b, _) = Supervisor::start(supervisor_config(dir_b.path(), &db_b), link_b)
        .await
        .unwrap();
    let mut events_b = EventWaiter::new(&supervisor_b, LIMIT);
    supervisor_b.create(None, Some(TOKEN)).await.unwrap();
    supervisor_b
        .start_session(TOKEN, Default::default())
        .await
        .unwrap();
    let info = events_b.state(TOKEN, SessionState::Connected).await;
    assert_eq!(info.jid.as_deref(), Some(device_jid(PHONE).as_str()));
    assert!(
        !events_b
            .others
            .iter()
            .any(|e| matches!(e, SessionEvent::Qr { .. })),
        "b showed a QR code"
    );
    assert_eq!(pairings(&h.server), 1, "no second pairing");
    assert_eq!(
        h.connections(PHONE),
        3,
        "a's pairing and login, then b's login"
    );
    h.assert_one_at_a_time();

    // a's store, under its old fence: wa-rs is refused every write.
    let deposed = SessionStore::new(
        CredentialsDb::Leased {
            db: store.clone(),
            fence: fence_a,
        },
        device,
    );
    let refused = deposed.put_session("15550009999.0", b"session").await;
    assert!(
        matches!(refused, Err(StoreError::Connection(_))),
        "{refused:?}"
    );
    // And a's link will not even connect it: the attempt fails with the reason.
    h.supervisor
        .start_session(TOKEN, Default::default())
        .await
        .unwrap();
    h.events
        .wait(TOKEN, |i| {
            i.reason
                .as_deref()
                .is_some_and(|r| r.contains("does not hold the session's lease"))
        })
        .await;
    assert_eq!(h.connections(PHONE), 3, "a did not dial");
    supervisor_b.shutdown().await.unwrap();
}

/// A sink whose events the test reads.
fn sink() -> (LifecycleSink, mpsc::UnboundedReceiver<LifecycleEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        LifecycleSink::new(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

/// A node that lost a session's lease and claimed it again has a new fence: the session it
/// opened under the old one (whose every write would now be refused) is not handed to the
/// new connection: while that session's connection runs, the open fails and says why (the
/// link waits a bounded time for it to end); once it ended, a new session is built under the
/// new fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_under_an_earlier_lease_is_not_reused() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let (pg, store) = tables_and_store(&postgres).await;
    let a = node(&pg, "a", 1).await;
    let first_fence = claim(&pg, &a, TOKEN).await;
    let on_a = Arc::new(Leased {
        db: store.clone(),
        fence: Mutex::new(Some(first_fence.clone())),
    });
    // Registration shows a QR code and waits: nobody scans it, so the connection runs on.
    let unscanned = Plan::always(Scenario::new([
        Step::Qr(QrSpec::new(1, QR, QR)),
        Step::wait(LONG),
    ]));
    let server = server_with(Script::default().with_registration(unscanned)).await;
    let h = Harness::with_credentials(server, on_a.clone()).await;
    let token = Token::parse(TOKEN).unwrap();

    // The first connection runs (it shows a QR code) under the first fence.
    let (first_sink, mut first_events) = sink();
    let mut first = h
        .link
        .open(&token, OpenOptions::default(), first_sink)
        .await
        .unwrap();
    next_qr(&mut first_events).await;

    // The lease is released and claimed again by the same node: a new fence.
    assert!(pg.release(&a, TOKEN, first_fence.fence).await.unwrap());
    let second_fence = claim(&pg, &a, TOKEN).await;
    assert_ne!(second_fence, first_fence);
    *on_a.fence.lock().unwrap() = Some(second_fence);

    // While the connection under the earlier lease runs, the open refuses to hand its session
    // on (every write of it would be refused), and says why.
    let (refused_sink, _) = sink();
    let refused = h
        .link
        .open(&token, OpenOptions::default(), refused_sink)
        .await;
    assert!(
        matches!(&refused, Err(LinkError::Open(reason)) if reason.contains("earlier lease")),
        "{:?}",
        refused.err()
    );
    assert!(
        first_events.try_recv().is_err(),
        "the first connection ran on, untouched"
    );

    // Once it ended, the open builds a new session under the new fence, which runs.
    first.close().await;
    drop(first);
    let (second_sink, mut second_events) = sink();
    let _second = h
        .link
        .open(&token, OpenOptions::default(), second_sink)
        .await
        .unwrap();
    next_qr(&mut second_events).await;
}

/// Waits for the connection's next QR code.
async fn next_qr(events: &mut mpsc::UnboundedReceiver<LifecycleEvent>) {
    tokio::time::timeout(LIMIT, async {
        while let Some(event) = events.recv().await {
            if matches!(event, LifecycleEvent::QrIssued { .. }) {
                return;
            }
        }
        panic!("the connection ended without a QR code");
    })
    .await
    .expect("a QR code");
}
